(comment) @comment
(string) @string
(block) @block
(interpolation) @code
