"""dermfeatures: model inputs shared by the towers and the ranker. `dermfeatures.spec` builds the feature spec
from the dataset manifest's column kinds (hashed id buckets, categorical and numeric fields, entity feature
tables, context rows); `dermfeatures.batches` turns ids into tensors through one code path (`Inputs`: impression
batches for training and scoring, user / ad batches for embedding, `training_batches` for the training loop);
`dermfeatures.onehot` defines a log's one-hot fields and crosses, read by the regression baseline and the
ranker's wide part alike."""

from dermfeatures.batches import ImpressionArrays, Inputs, to_device, training_batches
from dermfeatures.onehot import ADS_FIELDS, ColumnJoin, Fields, dataset_fields, field_keys, fields_keys
from dermfeatures.spec import (
    EntityTable,
    FeatureSpec,
    Field,
    build_feature_spec,
    context_rows,
    hash_ids,
    id_bucket_count,
    reference_context,
)

__all__ = [
    "ADS_FIELDS",
    "ColumnJoin",
    "EntityTable",
    "FeatureSpec",
    "Field",
    "Fields",
    "ImpressionArrays",
    "Inputs",
    "build_feature_spec",
    "context_rows",
    "dataset_fields",
    "field_keys",
    "fields_keys",
    "hash_ids",
    "id_bucket_count",
    "reference_context",
    "to_device",
    "training_batches",
]
