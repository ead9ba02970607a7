"""The wire: schemas, codec, the SNS envelope, and the boto3 boundary (the only layer that imports boto3)."""
