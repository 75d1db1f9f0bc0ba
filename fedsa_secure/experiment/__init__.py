"""`fedsa-secure experiment`: the paper-style comparison grid (issue 5 item 5), its statistics, table and plots."""
