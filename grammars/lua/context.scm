(comment) @comment
(string) @string
(block) @block
