"""A stateful singleton (Durable Functions pattern 4): an eternal counter driven by events."""
