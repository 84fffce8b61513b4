{#- The run's as-of timestamp (UTC): var('as_of') when given, else the current time. -#}
{% macro as_of() -%}
    {%- if var('as_of', none) -%}
        cast('{{ var("as_of") }}' as {{ dbt.type_timestamp() }})
    {%- else -%}
        {{ utc_now() }}
    {%- endif -%}
{%- endmacro %}

{#- Now as a plain UTC timestamp, comparable with the models' UTC timestamps without
    passing through the session's time zone. -#}
{% macro utc_now() -%}
    {{ return(adapter.dispatch('utc_now', 'glmm_ab')()) }}
{%- endmacro %}

{% macro default__utc_now() -%}
    {{ dbt.current_timestamp() }}
{%- endmacro %}

{% macro duckdb__utc_now() -%}
    (current_timestamp at time zone 'UTC')
{%- endmacro %}
