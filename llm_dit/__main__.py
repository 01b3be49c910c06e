from llm_dit.cli import main

main()
