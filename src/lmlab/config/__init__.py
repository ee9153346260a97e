"""Config layer: locating the tree, schemas, resolvers and validation. Never imports torch."""
