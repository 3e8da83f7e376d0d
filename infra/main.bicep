// A storage account for durable-azure task hubs, and the data roles its workers need.
//
// Deploy into an existing resource group:
//
//   az deployment group create --resource-group my-rg \
//     --template-file infra/main.bicep \
//     --parameters principalId=<object id of the identity the workers run as> \
//                  allowSharedKeyAccess=false
//
// Every worker, `durable-azure serve` and client needs read/write on queues (control and
// work-item queues), tables (History, Instances) and blobs (large payloads, poison
// messages) of the task hub: hence the three "Data Contributor" roles below. Role
// assignments take a few minutes to apply; until then requests get 403
// AuthorizationPermissionMismatch.
//
// Nothing here was compiled on the machine that wrote it (no Bicep CLI there): check with
// `az bicep build --file infra/main.bicep` (or `bicep build`) before relying on it.

metadata description = 'Storage account (queues, tables, blobs) for durable-azure task hubs, with data-plane role assignments for the workers\' identity.'

@description('Azure region of the storage account. Default: the resource group\'s region.')
param location string = resourceGroup().location

@description('Storage account name: 3-24 lowercase letters and digits, globally unique. Default: "durable" + a hash of the resource group id.')
@minLength(3)
@maxLength(24)
param storageAccountName string = 'durable${uniqueString(resourceGroup().id)}'

@description('Replication. Standard_LRS is enough for most task hubs; ZRS or GZRS for zone or region outages.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param skuName string = 'Standard_LRS'

@description('Object (principal) id of the identity the workers, the HTTP API and clients run as: a managed identity, a service principal, a user or a group. It gets Storage Queue, Table and Blob Data Contributor on this account.')
param principalId string

@description('What kind of principal principalId is (ServicePrincipal also covers managed identities).')
@allowed([
  'ServicePrincipal'
  'User'
  'Group'
])
param principalType string = 'ServicePrincipal'

@description('Allow account-key (Shared Key) authorization, i.e. connection strings with AccountKey and account SAS. false = Microsoft Entra ID only: workers must use an account URL and a token credential (DefaultAzureCredential).')
param allowSharedKeyAccess bool = true

@description('Tags for the storage account.')
param tags object = {}

// Built-in role definition ids (the same in every Azure cloud), from the Azure RBAC
// built-in roles reference (Storage category).
var dataRoles = [
  {
    name: 'Storage Queue Data Contributor'
    id: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  }
  {
    name: 'Storage Table Data Contributor'
    id: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  }
  {
    name: 'Storage Blob Data Contributor'
    id: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  }
]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    supportsHttpsTrafficOnly: true
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: allowSharedKeyAccess
    // With keys disabled, make the portal and tools use Entra ID too.
    defaultToOAuthAuthentication: !allowSharedKeyAccess
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource dataRoleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in dataRoles: {
    // Deterministic name: redeploying does not create duplicates.
    name: guid(storage.id, principalId, role.id)
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.id)
      principalId: principalId
      principalType: principalType
      description: 'durable-azure task hub access: ${role.name}'
    }
  }
]

@description('The storage account name.')
output storageAccountName string = storage.name

@description('Blob endpoint, e.g. https://<account>.blob.core.windows.net/ (the account URL durable-azure takes).')
output blobEndpoint string = storage.properties.primaryEndpoints.blob

@description('Queue endpoint, e.g. https://<account>.queue.core.windows.net/')
output queueEndpoint string = storage.properties.primaryEndpoints.queue

@description('Table endpoint, e.g. https://<account>.table.core.windows.net/')
output tableEndpoint string = storage.properties.primaryEndpoints.table
