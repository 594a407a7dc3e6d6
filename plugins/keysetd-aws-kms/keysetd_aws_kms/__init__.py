"""keysetd's ``aws_kms`` source: AWS KMS asymmetric signing keys as a public JWKS."""

from __future__ import annotations

from keysetd_aws_kms.source import AwsKmsSource, AwsKmsSourceConfig

__all__ = ["AwsKmsSource", "AwsKmsSourceConfig"]
