# Sourced by the real-editor tests in their keypress-to-paint mode (benches/paint.sh): the one
# file and line every editor types, so their figures compare. A new line under the `for` line
# (GHOSTLINE_PAINT_LINE_ABOVE), then GHOSTLINE_PAINT_TYPED key by key (a caller may set another
# line to type).
export GHOSTLINE_PAINT_LINE_ABOVE='    for a, b in zip(points, points[1:] + points[:1]):'
export GHOSTLINE_PAINT_TYPED=${GHOSTLINE_PAINT_TYPED:-'total += math.dist((a.x, a.y), (b.x, b.y))'}

# write_paint_file PATH: the benchmark's Python file.
write_paint_file() {
  cat >"$1" <<'EOF'
import math
from dataclasses import dataclass


@dataclass
class Point:
    x: float
    y: float


def distance(a, b):
    """Return the Euclidean distance between two points."""
    return math.hypot(a.x - b.x, a.y - b.y)


def perimeter(points):
    """Return the length of the closed path through the points."""
    total = 0.0
    for a, b in zip(points, points[1:] + points[:1]):
    return total
EOF
}
