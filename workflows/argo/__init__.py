"""Argo Workflows' own validation rules, ported from its source (v3.7: `workflow/validate`, the
controller's decoding and metrics), so that `kubellm lint`, `kubellm compile` and the local runner
refuse what `argo lint`, `argo submit` or the controller would refuse. Each rule names the Argo
function it comes from. `rules.argo_problems(doc)` is the entry point."""
