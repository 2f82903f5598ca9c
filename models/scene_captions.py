"""The rendered scenes' captions in German, French and Spanish, from hand-written word tables.

models/scenes.py says what a scene shows in English; this says the same in three more languages,
with each language's agreement (gender and number of colours and sizes, German case endings,
French elision, Spanish `gran`). Translations are exact by construction, so the tiny
multilingual text tower (models/tiny_multilingual.py) can be trained and checked on them, and
the sample crawl can carry non-English captions that describe their pictures.

    caption(scene, "de")  ->  "zwei kleine rote Sterne auf einem gestreiften blauen Hintergrund"
"""

from crawl2clip.models.scenes import Scene

LANGUAGES = ("en", "de", "fr", "es")

# German: noun -> (gender, singular, plural, dative plural); colours and sizes are stems that
# take the case endings below.
_DE_NOUNS = {
    "circle": ("m", "Kreis", "Kreise", "Kreisen"), "square": ("n", "Quadrat", "Quadrate", "Quadraten"),
    "triangle": ("n", "Dreieck", "Dreiecke", "Dreiecken"), "diamond": ("f", "Raute", "Rauten", "Rauten"),
    "star": ("m", "Stern", "Sterne", "Sternen"), "cross": ("n", "Kreuz", "Kreuze", "Kreuzen"),
    "ring": ("m", "Ring", "Ringe", "Ringen"), "hexagon": ("n", "Sechseck", "Sechsecke", "Sechsecken"),
}
_DE_COLORS = {
    "red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "orange": "orangefarben",
    "purple": "violett", "pink": "rosafarben", "brown": "braun", "black": "schwarz", "white": "weiß",
    "gray": "grau", "cyan": "türkisfarben",
}
_DE_SIZES = {"small": "klein", "large": "groß"}
_DE_PATTERNS = {"plain": "", "striped": "gestreift", "checkered": "kariert", "dotted": "gepunktet",
                "gradient": ""}
# Adjective endings: nominative after `ein` / without article (the same here), dative after
# `einem`/`einer` or a numeral, dative without article (masculine `Hintergrund` only).
_DE_NOMINATIVE = {"m": "er", "f": "e", "n": "es", "plural": "e"}

# French: noun -> (gender, singular, plural); colour -> (m, f, m pl, f pl).
_FR_NOUNS = {
    "circle": ("m", "cercle", "cercles"), "square": ("m", "carré", "carrés"),
    "triangle": ("m", "triangle", "triangles"), "diamond": ("m", "losange", "losanges"),
    "star": ("f", "étoile", "étoiles"), "cross": ("f", "croix", "croix"),
    "ring": ("m", "anneau", "anneaux"), "hexagon": ("m", "hexagone", "hexagones"),
}
_FR_COLORS = {
    "red": ("rouge", "rouge", "rouges", "rouges"), "green": ("vert", "verte", "verts", "vertes"),
    "blue": ("bleu", "bleue", "bleus", "bleues"), "yellow": ("jaune", "jaune", "jaunes", "jaunes"),
    "orange": ("orange",) * 4, "purple": ("violet", "violette", "violets", "violettes"),
    "pink": ("rose", "rose", "roses", "roses"), "brown": ("marron",) * 4,
    "black": ("noir", "noire", "noirs", "noires"), "white": ("blanc", "blanche", "blancs", "blanches"),
    "gray": ("gris", "grise", "gris", "grises"), "cyan": ("cyan",) * 4,
}
_FR_SIZES = {"small": ("petit", "petite", "petits", "petites"), "large": ("grand", "grande", "grands", "grandes")}
_FR_PATTERNS = {"plain": "", "striped": "rayé", "checkered": "à carreaux", "dotted": "à pois", "gradient": "dégradé"}

# Spanish: noun -> (gender, singular, plural); colour -> (m, f, m pl, f pl).
_ES_NOUNS = {
    "circle": ("m", "círculo", "círculos"), "square": ("m", "cuadrado", "cuadrados"),
    "triangle": ("m", "triángulo", "triángulos"), "diamond": ("m", "rombo", "rombos"),
    "star": ("f", "estrella", "estrellas"), "cross": ("f", "cruz", "cruces"),
    "ring": ("m", "anillo", "anillos"), "hexagon": ("m", "hexágono", "hexágonos"),
}
_ES_COLORS = {
    "red": ("rojo", "roja", "rojos", "rojas"), "green": ("verde", "verde", "verdes", "verdes"),
    "blue": ("azul", "azul", "azules", "azules"), "yellow": ("amarillo", "amarilla", "amarillos", "amarillas"),
    "orange": ("naranja",) * 4, "purple": ("morado", "morada", "morados", "moradas"),
    "pink": ("rosa",) * 4, "brown": ("marrón", "marrón", "marrones", "marrones"),
    "black": ("negro", "negra", "negros", "negras"), "white": ("blanco", "blanca", "blancos", "blancas"),
    "gray": ("gris", "gris", "grises", "grises"), "cyan": ("cian",) * 4,
}
# `grande` becomes `gran` before a singular noun.
_ES_SIZES = {"small": ("pequeño", "pequeña", "pequeños", "pequeñas"), "large": ("gran", "gran", "grandes", "grandes")}
_ES_PATTERNS = {"plain": "", "striped": "a rayas", "checkered": "a cuadros", "dotted": "de lunares",
                "gradient": "degradado"}


def _agreement(gender: str, count: int) -> int:
    """Index into a (m, f, m pl, f pl) table."""
    return (0 if gender == "m" else 1) + (2 if count > 1 else 0)


def _german(scene: Scene) -> str:
    gender, singular, plural, dative_plural = _DE_NOUNS[scene.shape]
    one = scene.count == 1
    form = gender if one else "plural"
    noun, noun_dative = (singular, singular) if one else (plural, dative_plural)
    color, size = _DE_COLORS[scene.color], _DE_SIZES[scene.size]
    count = {"m": "ein", "f": "eine", "n": "ein"}[gender] if one else {2: "zwei", 3: "drei"}[scene.count]
    count_dative = ("einer" if gender == "f" else "einem") if one else count
    nominative = _DE_NOMINATIVE[form]
    pattern, ground_color = _DE_PATTERNS[scene.pattern], _DE_COLORS[scene.background]
    suffix = " mit Farbverlauf" if scene.pattern == "gradient" else ""

    def ground(ending: str) -> str:  # the masculine `Hintergrund` with its adjectives
        words = ([pattern + ending] if pattern else []) + [ground_color + ending, "Hintergrund"]
        return " ".join(words) + suffix

    return [
        f"{count} {size}{nominative} {color}{nominative} {noun} auf einem {ground('en')}",
        f"ein Foto von {count_dative} {color}en {noun_dative}",
        f"{color}{nominative} {noun} auf {ground('em')}",
        f"{count} {color}{nominative} {noun}, {ground('er')}",
    ][scene.template]


def _romance(scene: Scene, nouns: dict, colors: dict, sizes: dict, patterns: dict, words: dict) -> str:
    gender, singular, plural = nouns[scene.shape]
    index = _agreement(gender, scene.count)
    noun = singular if scene.count == 1 else plural
    color, size = colors[scene.color][index], sizes[scene.size][index]
    count = words["one"][gender] if scene.count == 1 else words["numbers"][scene.count]
    # the masculine `fond`/`fondo` with its colour and pattern after it
    ground = " ".join(filter(None, [words["background"], colors[scene.background][0], patterns[scene.pattern]]))
    return [
        f"{count} {size} {noun} {color} {words['on']} {words['one']['m']} {ground}",
        f"{words['photo_of'](count)} {noun} {color}",
        f"{noun} {color} {words['on']} {ground}",
        f"{count} {noun} {color}, {ground}",
    ][scene.template]


def _french_photo_of(count: str) -> str:
    return f"une photo d'{count}" if count in ("un", "une") else f"une photo de {count}"


_FR_WORDS = {"one": {"m": "un", "f": "une"}, "numbers": {2: "deux", 3: "trois"}, "on": "sur",
             "background": "fond", "photo_of": _french_photo_of}
_ES_WORDS = {"one": {"m": "un", "f": "una"}, "numbers": {2: "dos", 3: "tres"}, "on": "sobre",
             "background": "fondo", "photo_of": lambda count: f"una foto de {count}"}


def caption(scene: Scene, language: str) -> str:
    """The scene's caption in `language` (one of LANGUAGES), with the scene's own wording template."""
    if language == "en":
        return scene.caption()
    if language == "de":
        return _german(scene)
    if language == "fr":
        return _romance(scene, _FR_NOUNS, _FR_COLORS, _FR_SIZES, _FR_PATTERNS, _FR_WORDS)
    if language == "es":
        return _romance(scene, _ES_NOUNS, _ES_COLORS, _ES_SIZES, _ES_PATTERNS, _ES_WORDS)
    raise ValueError(f"no captions in {language!r}; choose one of {', '.join(LANGUAGES)}")
