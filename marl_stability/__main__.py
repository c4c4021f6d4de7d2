from marl_stability.cli import main

main()
