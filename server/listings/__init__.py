"""Listings: create, read, edit, hide, the neighbourhood feed, likes, and their cache."""
