"""Model sources → :class:`~smmf_plan.model.ModelSpec` (parameter specs, never weights)."""
