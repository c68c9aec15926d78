"""The closed sets of choices the command line offers, one home each: the modules that implement them and the
parser both read them here (a light module, so that building the parser imports neither pyarrow nor torch)."""

ON_BAD_ROWS = ("error", "skip")  # a malformed input row stops with its line, or is skipped and counted
TIMESTAMP_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}  # divisor to Unix seconds
PREPARE_ENGINES = ("embedded", "spark")
LAYOUTS = ("arrays", "parquet")  # a prepared folder: memory-mapped .npy, or Spark-written Parquet datasets
INDEX_KINDS = ("exact", "hnsw", "ivf", "faiss")
EXACT_BACKENDS = ("auto", "torch", "faiss")  # exact search: by batch size, or one back-end always
INDEX_METRICS = ("auto", "ip", "l2")  # Faiss inner product, the inner-product-to-L2 transform, measured at export
EVAL_SPLITS = ("valid", "test")
RECOMMEND_SPLITS = ("train", "valid", "test", "all")
TUNE_SAMPLERS = ("tpe", "random")
TUNE_PRUNERS = ("median", "halving", "none")
