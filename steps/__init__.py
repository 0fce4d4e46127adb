"""kubellm steps: one module per container step. Nothing here imports Hera or Argo."""
