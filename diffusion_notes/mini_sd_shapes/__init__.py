"""The coloured-shapes world of issue 20's compositional miniature (prototype phase: no model shipped yet).

:mod:`.world` renders scenes (colour, shape, position, size) and writes their captions, with five
colour-shape pairs held out of training; :mod:`.judge` reads the four attributes back from pixels.
``docs/shapes_miniature.md`` reports what the prototypes measured with them.
"""
