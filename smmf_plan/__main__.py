from smmf_plan.cli import main

main()
