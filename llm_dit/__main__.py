from llm_dit.cli import console

console()
