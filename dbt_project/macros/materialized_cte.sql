{#- The keyword that makes a CTE read more than once be computed once: `with x as {{ materialized_cte() }} (...)`.
    DuckDB would otherwise inline it at each use (fct_user_cv_counts reads its join of the event log
    twice); adapters without the keyword (Spark) get nothing and plan it themselves. -#}
{% macro materialized_cte() -%}
    {{ return(adapter.dispatch('materialized_cte', 'glmm_ab')()) }}
{%- endmacro %}

{% macro default__materialized_cte() -%}
{%- endmacro %}

{% macro duckdb__materialized_cte() -%}
    materialized
{%- endmacro %}
