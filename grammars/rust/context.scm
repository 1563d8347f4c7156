; Regions of a Rust file around the cursor.
[(line_comment) (block_comment)] @comment
[(string_literal) (raw_string_literal)] @string
[(block) (declaration_list) (field_declaration_list) (enum_variant_list) (match_block)] @block
