import math


def circle_area(radius):
    """Return the area of a circle with the given radius."""
    return 3.14159 * 


def circle_circumference(radius):
    """Return the circumference of a circle with the given radius."""
    return 2 * math.pi * radius


def rectangle_area(width, height):
    return width * height


if __name__ == "__main__":
    print(circle_area(2.0))
