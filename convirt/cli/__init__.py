"""Entry points behind the one ``convirt`` command. Nothing imports this package."""
