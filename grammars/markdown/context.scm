; Markdown is prose; code blocks are code.
[(fenced_code_block) (indented_code_block)] @code
