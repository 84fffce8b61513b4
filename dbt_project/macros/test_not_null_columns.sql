{#- Generic test: none of `columns` is NULL in any row. One query for a model's
    contracted columns: Spark's Parquet tables cannot enforce not_null constraints,
    so this test is what holds them there (and it double-checks DuckDB's). -#}
{% test not_null_columns(model, columns) %}

select *
from {{ model }}
where {% for column in columns %}{{ column }} is null{{ " or " if not loop.last }}{% endfor %}

{% endtest %}
