(comment) @comment
[(string_literal) (system_lib_string)] @string
[(compound_statement) (field_declaration_list) (enumerator_list) (declaration_list)] @block
