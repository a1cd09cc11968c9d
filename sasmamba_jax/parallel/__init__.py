"""Device meshes, the sharding rule, and multi-host start-up."""
