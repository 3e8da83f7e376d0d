"""Hello cities: function chaining and fan-out/fan-in (Durable Functions patterns 1 and 2)."""
