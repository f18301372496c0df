"""pytest fixtures of the throwaway Postgres kit (placeholder until the kit lands)."""
