complete --keep-order --exclusive --command micro --arguments "(COMPLETE=fish micro -- (commandline --current-process --tokenize --cut-at-cursor) (commandline --current-token))"
