"""Running on many devices and hosts: the mesh and its logical-axis rules, TPU slice presets,
multi-host start-up, memory plans, and per-compilation XLA options."""
