from marl_stability.cli.main import main

main()
