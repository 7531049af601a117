"""Listing photos: signed direct uploads to S3 (or local disk), verified before they show."""
