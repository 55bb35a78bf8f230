"""Tiny text-to-video world: procedurally rendered clips (`data`) and an automatic judge (`judge`)."""
