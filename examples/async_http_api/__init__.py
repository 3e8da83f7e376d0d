"""Pattern 3, async HTTP APIs: start over HTTP, get 202 + Location, poll until done."""
