(comment) @comment
[(interpreted_string_literal) (raw_string_literal)] @string
[(block) (field_declaration_list)] @block
