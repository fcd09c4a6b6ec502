"""smmf-plan's command line (installed as ``smmf_plan.cli``)."""


def main() -> None:  # replaced by the real app below once written
    raise SystemExit("smmf-plan CLI not built yet")
