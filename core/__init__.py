"""What every app shares below the API: domain errors, the outbound-request guard (SSRF), size
units and the unset sentinel for partial updates. Imports no app."""
