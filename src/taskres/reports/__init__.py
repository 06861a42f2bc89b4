"""The reports: records in, tables, figures and HTML pages out; nothing here computes a result.

``tables`` (``taskres report``: a sweep's records -> report.md/.csv/.json and the few-shot figure),
``sweep`` (that summary as one self-contained HTML page), ``run`` (one run's report.html from its metrics),
``htmlpage`` (the small HTML pieces both pages share: stylesheet, tables, images as data URIs).
"""
