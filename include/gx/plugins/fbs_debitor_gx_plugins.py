"""fbs-debitor's GX plugins, named in great_expectations.yml (GX puts this folder on sys.path).

* ``OfflinePageView`` / ``OfflineIndexPageView``: GX looks for Data Docs templates in its own
  package first and in ``plugins/custom_data_docs/views`` last, so a custom view can add templates
  but never replace one. These views put the custom folders first: the ``page.j2``,
  ``index_page.j2``, ``js_script_imports.j2``, ``top_navbar.j2``, ... there load CSS, JavaScript,
  fonts and images from the site's own ``static/`` (vendored in ``include/gx/static/``) instead
  of CDNs, so the site works on a server without internet access.
* ``SlimValidationResultsStore``: writes each validation result with at most
  ``KEPT_UNEXPECTED`` unexpected rows per expectation (the Data Docs page shows a sample of
  liability ids next to the full count). The result the run gets back in memory is untouched and
  complete: the findings are built from that, not from the store. This keeps a run's files small
  and the Data Docs index (which loads every kept result) fast, however large the batch.
"""

from __future__ import annotations

import copy

from great_expectations.data_context.store import ValidationResultsStore
from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView
from jinja2 import ChoiceLoader, FileSystemLoader

KEPT_UNEXPECTED = 20
_FULL_LISTS = ("unexpected_list", "unexpected_index_list")


def _custom_first(view) -> None:
    folders = [d for d in (view.custom_views_directory, view.custom_styles_directory) if d]
    view.env.loader = ChoiceLoader([*(FileSystemLoader(d) for d in folders), view.env.loader])


class OfflinePageView(DefaultJinjaPageView):
    """Expectation suite and validation result pages."""

    def __init__(self, custom_styles_directory=None, custom_views_directory=None) -> None:
        super().__init__(custom_styles_directory=custom_styles_directory,
                         custom_views_directory=custom_views_directory)
        _custom_first(self)


class OfflineIndexPageView(DefaultJinjaIndexPageView):
    """The site's index page."""

    def __init__(self, custom_styles_directory=None, custom_views_directory=None) -> None:
        super().__init__(custom_styles_directory=custom_styles_directory,
                         custom_views_directory=custom_views_directory)
        _custom_first(self)


def _slim(suite_result):
    """A shallow copy whose per-expectation results keep a sample of the unexpected rows."""
    slim = copy.copy(suite_result)
    slim.results = []
    for result in suite_result.results:
        kept = copy.copy(result)
        if result.result:
            kept.result = {k: (v[:KEPT_UNEXPECTED] if k in _FULL_LISTS and isinstance(v, list) else v)
                           for k, v in result.result.items()}
        slim.results.append(kept)
    return slim


class SlimValidationResultsStore(ValidationResultsStore):
    """GX's validation results store, writing slim copies (see the module docstring)."""

    def serialize(self, value):
        return super().serialize(_slim(value))
