[(line_comment) (block_comment)] @comment
(string_literal) @string
[(block) (class_body) (interface_body) (enum_body) (constructor_body) (switch_block)] @block
