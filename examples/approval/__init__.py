"""Human interaction with a timeout (Durable Functions pattern 5): an approval workflow."""
