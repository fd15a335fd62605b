"""Parse reStructuredText pages of upstream's Sphinx docs with docutils alone: ``python -m forktool.rstcheck FILE...``.

This only parses the pages; it does not build them. ``make lint-upstream``/``lint-pr`` use it on the pages a branch
adds because upstream's real Sphinx build takes minutes and needs pandoc: that build is ``make docs-upstream``
(:func:`forktool.lint.docs_upstream`). Docutils parses the page with Sphinx's cross-reference roles (``:class:``,
``:doc:``, ...) and sphinxemoji's ``|:name:|`` substitutions stood in for, and ``code-block`` highlighting off; any
message at warning level or above is reported. Needs ``docutils``.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

SPHINX_ROLES = ('class', 'meth', 'func', 'mod', 'attr', 'data', 'doc', 'ref', 'obj', 'exc', 'any', 'term')
#: Sphinx directives whose body is reStructuredText (parsed and checked) or something else (skipped).
SPHINX_RST_DIRECTIVES = ('seealso', 'versionadded', 'versionchanged', 'deprecated', 'only')
SPHINX_OTHER_DIRECTIVES = (
    'toctree',
    'testsetup',
    'testcode',
    'testoutput',
    'testcleanup',
    'doctest',
    'autoclass',
    'autofunction',
    'automodule',
    'autosummary',
    'currentmodule',
    'literalinclude',
)


def check_rst(text: str, name: str = '<page>') -> list[str]:
    """Docutils' warnings and errors for ``text``; an empty list when it parses cleanly."""
    import docutils.core
    from docutils import nodes
    from docutils.parsers.rst import Directive, directives, roles

    class AnyOption(dict):

        def __missing__(self, key):
            return directives.unchanged

    class StandIn(Directive):
        optional_arguments = 99
        final_argument_whitespace = True
        has_content = True
        option_spec = AnyOption()
        parse_body = False

        def run(self):
            if not self.parse_body:
                return []
            node = nodes.container()
            self.state.nested_parse(self.content, self.content_offset, node)
            return [node]

    class StandInRst(StandIn):
        parse_body = True

    for directive in SPHINX_RST_DIRECTIVES:
        directives.register_directive(directive, StandInRst)
    for directive in SPHINX_OTHER_DIRECTIVES:
        directives.register_directive(directive, StandIn)

    def stand_in(role, rawtext, text, lineno, inliner, options=None, content=None):
        return [nodes.literal(rawtext, text)], []

    for role in SPHINX_ROLES:
        roles.register_local_role(role, stand_in)
    emoji = sorted(set(re.findall(r'\|(:[a-z0-9_+-]+:)\|', text)))
    prolog = ''.join(f'.. |{e}| replace:: emoji\n' for e in emoji)
    stream = io.StringIO()
    docutils.core.publish_doctree(
        prolog + '\n' + text if prolog else text,
        source_path=name,
        settings_overrides={
            'warning_stream': stream,
            'report_level': 2,
            'halt_level': 5,
            'syntax_highlight': 'none',
        },
    )
    return [line for line in stream.getvalue().splitlines() if line.strip()]


def main(argv: list[str]) -> int:
    problems = [p for path in argv for p in check_rst(Path(path).read_text(encoding='utf-8'), path)]
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
