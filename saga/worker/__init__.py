"""The worker side: `runner` executes claimed steps, `heartbeat` keeps their leases, `context`
is what a step's code is given (kept light: `import saga` loads only it)."""
