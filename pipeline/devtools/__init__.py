"""Development tooling: what the tests, the benchmark and local runs use to start and
drive ``sessionizer`` processes and the services they need. Nothing here runs in
production."""
