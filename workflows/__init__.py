"""kubellm workflows: Hera DAGs that wire steps, the compiler CLI and the local runner."""
