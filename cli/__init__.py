"""The `unfold` command. Thin: parse, call one library function, render, exit code."""
