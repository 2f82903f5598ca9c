"""robots.txt (Google's matching rules) and X-Robots-Tag, one function at a time."""

import pytest

from crawl2clip.transforms.download.robots import (
    RobotsCache,
    RobotsPolicy,
    robots_key,
    robots_url,
    x_robots_tag_forbids,
)

TOKEN = "crawl2clip"
SITE = "https://www.example.com"

NEWS_SITE = """\
# robots.txt for www.example.com
User-agent: *
Disallow: /private/
Allow: /private/public/
Disallow: /*.gif$
Disallow: /search
Disallow: /cgi-bin/

User-agent: Googlebot-Image
Disallow: /

Sitemap: https://www.example.com/sitemap.xml
"""

AI_BLOCKING_SITE = """\
User-agent: GPTBot
Disallow: /

User-agent: CCBot
Disallow: /

User-agent: *
Disallow: /

User-agent: Crawl2Clip/1.0
Allow: /images/
Disallow: /images/private
"""


@pytest.mark.parametrize(
    "path, allowed",
    [
        ("/", True),
        ("/photos/cat.jpg", True),
        ("/private/cat.jpg", False),
        ("/private/public/cat.jpg", True),  # the longer Allow beats the shorter Disallow
        ("/img/anim.gif", False),
        ("/img/anim.gif?v=2", True),  # `$` anchors the end
        ("/search?q=cats", False),
        ("/searching.jpg", False),  # rules are prefixes
        ("/cgi-bin/img.php", False),
        ("/robots.txt", True),
    ],
)
def test_wildcard_group_longest_rule_wins(path, allowed):
    policy = RobotsPolicy.from_body(NEWS_SITE)
    assert policy.allows(SITE + path, TOKEN) is allowed


def test_other_bots_group_does_not_apply_to_us():
    policy = RobotsPolicy.from_body(NEWS_SITE)
    assert policy.allows(SITE + "/photos/cat.jpg", TOKEN)
    assert not policy.allows(SITE + "/photos/cat.jpg", "Googlebot-Image")


def test_our_group_beats_the_wildcard_group():
    policy = RobotsPolicy.from_body(AI_BLOCKING_SITE)
    assert policy.allows(SITE + "/images/cat.jpg", TOKEN)
    assert not policy.allows(SITE + "/images/private/cat.jpg", TOKEN)
    # our group says nothing about /about: allowed, the `*` group's Disallow is not consulted
    assert policy.allows(SITE + "/about", TOKEN)
    assert policy.allows(SITE + "/images/cat.jpg", "CRAWL2CLIP")  # product tokens ignore case
    for bot in ("GPTBot", "CCBot", "SomeOtherBot"):
        assert not policy.allows(SITE + "/images/cat.jpg", bot)


def test_agent_names_match_exactly_not_as_substrings():
    # urllib.robotparser would apply `clip` to crawl2clip; Google's spec does not.
    policy = RobotsPolicy.from_body("User-agent: clip\nDisallow: /\n")
    assert policy.allows(SITE + "/a.jpg", TOKEN)


def test_allow_wins_a_tie_and_dollar_root():
    policy = RobotsPolicy.from_body("User-agent: *\nDisallow: /page\nAllow: /page\n")
    assert policy.allows(SITE + "/page.jpg", TOKEN)
    policy = RobotsPolicy.from_body("User-agent: *\nAllow: /$\nDisallow: /\n")
    assert policy.allows(SITE + "/", TOKEN)
    assert not policy.allows(SITE + "/page.htm", TOKEN)


def test_groups_for_the_same_agent_merge_and_blank_lines_do_not_end_a_group():
    body = "User-agent: *\nDisallow: /a/\n\nUser-agent: *\n\nDisallow: /b/\n"
    policy = RobotsPolicy.from_body(body)
    assert not policy.allows(SITE + "/a/x.jpg", TOKEN)
    assert not policy.allows(SITE + "/b/x.jpg", TOKEN)
    assert policy.allows(SITE + "/c/x.jpg", TOKEN)


def test_empty_disallow_and_empty_file_allow_everything():
    assert RobotsPolicy.from_body("User-agent: *\nDisallow:\n").allows(SITE + "/x.jpg", TOKEN)
    assert RobotsPolicy.from_body("").allows(SITE + "/x.jpg", TOKEN)
    assert RobotsPolicy.from_body("<html>not a robots file</html>").allows(SITE + "/x.jpg", TOKEN)


def test_bytes_body_with_bom_and_percent_escapes():
    body = "\ufeffUser-agent: *\nDisallow: /caf%C3%A9/\n".encode()
    policy = RobotsPolicy.from_body(body)
    assert not policy.allows(SITE + "/café/x.jpg", TOKEN)
    assert not policy.allows(SITE + "/caf%C3%A9/x.jpg", TOKEN)
    assert policy.allows(SITE + "/cafe/x.jpg", TOKEN)


@pytest.mark.parametrize(
    "status, allowed",
    [(404, True), (403, True), (410, True), (301, True), (429, False), (500, False), (503, False), (None, False)],
)
def test_fetch_outcomes(status, allowed):
    policy = RobotsPolicy.from_fetch(status, "User-agent: *\nAllow: /\n")
    assert policy.allows(SITE + "/x.jpg", TOKEN) is allowed
    assert policy.allows(SITE + "/robots.txt", TOKEN) is allowed


def test_fetch_200_uses_the_body():
    policy = RobotsPolicy.from_fetch(200, b"User-agent: *\nDisallow: /\n")
    assert not policy.allows(SITE + "/x.jpg", TOKEN)


def test_robots_key_is_per_scheme_host_and_port():
    assert robots_key("https://WWW.Example.com:443/a/b.jpg?x") == "https://www.example.com"
    assert robots_key("http://example.com:8080/a.jpg") == "http://example.com:8080"
    assert robots_url("http://[2001:db8::1]:80/a.jpg") == "http://[2001:db8::1]/robots.txt"
    assert robots_key("http://example.com/") != robots_key("https://example.com/")


def test_cache_is_a_bounded_lru():
    cache = RobotsCache(max_sites=2)
    deny = RobotsPolicy.disallow_all()
    cache.put("https://a.example/x.jpg", deny)
    cache.put("https://b.example/x.jpg", RobotsPolicy.allow_all())
    assert cache.get("https://A.example/other.png") is deny  # same site, any path
    cache.put("https://c.example/x.jpg", RobotsPolicy.allow_all())  # b is least recently used
    assert len(cache) == 2
    assert cache.get("https://b.example/x.jpg") is None
    assert cache.get("https://a.example/x.jpg") is deny
    assert cache.get("http://a.example/x.jpg") is None  # another scheme, another robots.txt


@pytest.mark.parametrize(
    "values, expected",
    [
        ([], None),
        (["noai"], "noai"),
        (["NoImageAI"], "noimageai"),
        (["noindex, nofollow"], "noindex"),
        (["nofollow, noarchive"], None),
        (["nofollow", "noimageindex"], "noimageindex"),
        (["otherbot: noindex"], None),  # only for otherbot
        (["otherbot: noindex, noai"], None),  # the scope covers the whole list
        (["crawl2clip: noai"], "noai"),
        (["CRAWL2CLIP: NoIndex, nofollow"], "noindex"),
        (["otherbot: noai", "crawl2clip: nofollow"], None),
        (["otherbot: noai, crawl2clip: noindex"], "noindex"),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None),
        (["unavailable_after: Friday, 25-Jun-2010 15:00:00 PST, noindex"], "noindex"),
        (["max-image-preview: none"], None),
        (["none"], "noindex"),
        (["  noai  "], "noai"),
    ],
)
def test_x_robots_tag(values, expected):
    assert x_robots_tag_forbids(values, TOKEN) == expected


def test_x_robots_tag_custom_forbidden_list():
    assert x_robots_tag_forbids(["noindex"], TOKEN, forbidden=("noai",)) is None
    assert x_robots_tag_forbids(["NOAI"], TOKEN, forbidden=("noai",)) == "noai"
