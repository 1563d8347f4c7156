[(comment) (html_comment)] @comment
[(string) (template_string)] @string
[(statement_block) (class_body) (switch_body) (class_static_block) (enum_body) (interface_body)] @block
(template_substitution) @code
