"""What is made from finished runs: reports, plots, paired comparisons, the paper's table and leaderboard submissions."""
