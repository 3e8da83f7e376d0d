"""Function chaining (Durable Functions pattern 1): each activity feeds the next."""
