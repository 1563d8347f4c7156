(comment) @comment
[(string) (raw_string) (ansi_c_string) (heredoc_body)] @string
[(compound_statement) (do_group)] @block
