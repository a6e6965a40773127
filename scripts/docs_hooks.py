"""MkDocs hooks (mkdocs.yml `hooks:`)."""
